package main

import (
	"fmt"
	"os"

	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"

	"github.com/ibuild/ibuild/builder"
)

// enterUserNamespace re-executes an unprivileged ibuild as the root of a
// new user and mount namespace when isolation needs one (see
// builder.MaybeReexecUsingUserNamespace): when it does, it does not
// return. The storage root is fixed first and handed down in IBUILD_ROOT,
// since inside the namespace the process is root and would default to
// /var/lib/ibuild.
func enterUserNamespace(c *cli.Context, isolation builder.Isolation) error {
	return builder.MaybeReexecUsingUserNamespace(builder.ReexecOptions{
		Isolation: isolation,
		Warn: func(msg string) {
			fmt.Fprintln(os.Stderr, "ibuild: warning:", msg)
			// containers/storage goes on to log the same in its words
			// (no ranges in /etc/subuid, /etc/subgid): said once is enough.
			logrus.SetLevel(logrus.ErrorLevel)
		},
		BeforeReexec: func() error {
			root, err := storeRoot(c)
			if err != nil {
				return err
			}
			return os.Setenv("IBUILD_ROOT", root)
		},
	})
}
