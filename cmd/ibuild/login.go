package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/ibuild/ibuild/registry"
)

var (
	authfileFlag = &cli.StringFlag{Name: "authfile", Usage: "containers auth.json with registry credentials (default $REGISTRY_AUTH_FILE, else $XDG_RUNTIME_DIR/containers/auth.json)"}
	certDirFlag  = &cli.StringFlag{Name: "cert-dir", Usage: "directory of *.crt CA certificates and client.cert/client.key used for the registry, instead of /etc/containers/certs.d/HOST and /etc/docker/certs.d/HOST"}
	// registryTimeoutFlag is pull's, push's and build's.
	registryTimeoutFlag = &cli.DurationFlag{Name: "registry-timeout", Value: registry.DefaultTimeout,
		Usage: "give up a registry request that moves no data for this long (then retry it a few times); 0: wait forever"}
)

// authConfig is where credentials are looked up, from the environment.
func authConfig() registry.AuthConfig {
	home, _ := os.UserHomeDir()
	return registry.AuthConfig{
		AuthFile:        os.Getenv("REGISTRY_AUTH_FILE"),
		DockerConfigDir: os.Getenv("DOCKER_CONFIG"),
		Home:            home,
		RuntimeDir:      os.Getenv("XDG_RUNTIME_DIR"),
		HelperPath:      os.Getenv("PATH"),
	}
}

// connOptions reads the registry flags pull, push and build share.
func connOptions(c *cli.Context) registry.Conn {
	conn := registry.Conn{
		Insecure: c.StringSlice("insecure-registry"),
		Auth:     authConfig(),
		CertDir:  c.String("cert-dir"),
	}
	if f := c.String("authfile"); f != "" {
		conn.Auth.AuthFile = f
	}
	if c.IsSet("tls-verify") {
		v := c.Bool("tls-verify")
		conn.TLSVerify = &v
	}
	if c.IsSet("registry-timeout") {
		if conn.Timeout = c.Duration("registry-timeout"); conn.Timeout <= 0 {
			conn.Timeout = -1 // no limit
		}
	}
	return conn
}

// loginAuthFile is the auth.json login and logout write: --authfile, else
// $REGISTRY_AUTH_FILE, else $XDG_RUNTIME_DIR/containers/auth.json, else
// ~/.config/containers/auth.json.
func loginAuthFile(c *cli.Context) (string, error) {
	if f := c.String("authfile"); f != "" {
		return f, nil
	}
	if f := os.Getenv("REGISTRY_AUTH_FILE"); f != "" {
		return f, nil
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "containers", "auth.json"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no auth file: set --authfile (%w)", err)
	}
	return filepath.Join(home, ".config", "containers", "auth.json"), nil
}

func loginCommand() *cli.Command {
	return &cli.Command{
		Name:      "login",
		Usage:     "check credentials against a registry and store them in auth.json",
		ArgsUsage: "REGISTRY",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "username", Aliases: []string{"u"}, Usage: "user name (asked for when not given)"},
			&cli.StringFlag{Name: "password", Aliases: []string{"p"}, Usage: "password (prefer --password-stdin)"},
			&cli.BoolFlag{Name: "password-stdin", Usage: "read the password from standard input"},
			&cli.StringSliceFlag{Name: "insecure-registry", Usage: "reach this registry host[:port] over plain HTTP (repeatable; localhost and 127.0.0.1 always are)"},
			&cli.BoolFlag{Name: "tls-verify", Value: true, Usage: "verify the registry's TLS certificate"},
			authfileFlag, certDirFlag,
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return cli.Exit("login needs one registry (e.g. ibuild login registry.example.com)", 2)
			}
			reg := c.Args().First()
			user, pass := c.String("username"), c.String("password")
			if c.Bool("password-stdin") {
				if pass != "" {
					return cli.Exit("--password and --password-stdin are exclusive", 2)
				}
				if user == "" {
					return cli.Exit("--password-stdin needs --username", 2)
				}
				b, err := io.ReadAll(os.Stdin)
				if err != nil {
					return err
				}
				pass = strings.TrimRight(string(b), "\r\n")
			}
			in := bufio.NewReader(os.Stdin)
			if user == "" {
				fmt.Fprint(os.Stderr, "Username: ")
				l, err := in.ReadString('\n')
				if err != nil && l == "" {
					return errors.New("login: no username")
				}
				user = strings.TrimSpace(l)
			}
			if pass == "" {
				fmt.Fprint(os.Stderr, "Password: ")
				// Echo is not turned off: prefer -p or --password-stdin.
				l, _ := in.ReadString('\n')
				pass = strings.TrimRight(l, "\r\n")
			}
			f, err := loginAuthFile(c)
			if err != nil {
				return err
			}
			if err := registry.Login(c.Context, reg, user, pass, f, connOptions(c)); err != nil {
				return err
			}
			fmt.Fprintln(os.Stderr, "Login Succeeded")
			return nil
		},
	}
}

func logoutCommand() *cli.Command {
	return &cli.Command{
		Name:      "logout",
		Usage:     "remove a registry's credentials from auth.json",
		ArgsUsage: "REGISTRY",
		Flags:     []cli.Flag{authfileFlag},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return cli.Exit("logout needs one registry", 2)
			}
			f, err := loginAuthFile(c)
			if err != nil {
				return err
			}
			if err := registry.Logout(c.Args().First(), f); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "Removed login credentials for %s\n", c.Args().First())
			return nil
		},
	}
}
