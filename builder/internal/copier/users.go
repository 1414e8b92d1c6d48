package copier

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// Owner is a numeric uid/gid pair as stored in a layer.
type Owner struct {
	UID, GID int
}

// FileReader reads a file of the image; nil means the image has no files
// (FROM scratch).
type FileReader interface {
	ReadFile(p string) ([]byte, error)
}

// ResolveOwner resolves a --chown value, or the USER a WORKDIR is made
// for, "user[:group]" (names or ids) against the image's /etc/passwd and
// /etc/group, as BuildKit does for file operations: a user without a group
// gets the user's primary group (a numeric user the same number); a user
// name the image does not have (or an image without /etc/passwd) gives
// 0:0, and an unknown group name leaves the user's group. (RUN resolves
// USER strictly: see the builder's resolveRunUser.)
func ResolveOwner(spec string, files FileReader) (Owner, error) {
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	if userPart == "" && !hasGroup {
		return Owner{}, fmt.Errorf("empty user")
	}
	var o Owner
	uid, uidErr := strconv.Atoi(userPart)
	switch {
	case userPart == "":
		o.UID = 0
	case uidErr == nil:
		if uid < 0 {
			return Owner{}, fmt.Errorf("invalid uid %q", userPart)
		}
		// A numeric user without a group gets the same number as its
		// group, without consulting /etc/passwd (BuildKit's rule).
		o.UID = uid
		o.GID = uid
	default:
		if e, ok := LookupPasswd(files, userPart, -1); ok {
			o.UID, o.GID = e.UID, e.GID
		}
	}
	if !hasGroup {
		return o, nil
	}
	if gid, err := strconv.Atoi(groupPart); err == nil {
		if gid < 0 {
			return Owner{}, fmt.Errorf("invalid gid %q", groupPart)
		}
		o.GID = gid
		return o, nil
	}
	if groupPart == "" {
		return o, nil // "user:" and ":" as BuildKit: no group given
	}
	if g, ok := lookupGroup(files, groupPart); ok {
		o.GID = g
	}
	return o, nil
}

// ResolveGroup resolves a group name or id strictly, for RUN.
func ResolveGroup(group string, files FileReader) (int, error) {
	if gid, err := strconv.Atoi(group); err == nil {
		if gid < 0 {
			return 0, fmt.Errorf("invalid gid %q", group)
		}
		return gid, nil
	}
	g, ok := lookupGroup(files, group)
	if !ok {
		return 0, fmt.Errorf("unable to find group %s: no matching entries in group file", group)
	}
	return g, nil
}

// PasswdEntry is a user of an image's /etc/passwd.
type PasswdEntry struct {
	Name     string
	UID, GID int
	Home     string
}

// LookupPasswd finds a user of the image's /etc/passwd by name, or by
// uid when name is "".
func LookupPasswd(files FileReader, name string, uid int) (PasswdEntry, bool) {
	if files == nil {
		return PasswdEntry{}, false
	}
	data, err := files.ReadFile("/etc/passwd")
	if err != nil {
		return PasswdEntry{}, false
	}
	var found PasswdEntry
	ok := false
	ScanColonFile(data, func(f []string) bool {
		if len(f) < 4 {
			return true
		}
		u, err1 := strconv.Atoi(f[2])
		g, err2 := strconv.Atoi(f[3])
		if err1 != nil || err2 != nil {
			return true
		}
		if (name != "" && f[0] == name) || (name == "" && u == uid) {
			found = PasswdEntry{Name: f[0], UID: u, GID: g}
			if len(f) > 5 {
				found.Home = f[5]
			}
			ok = true
			return false
		}
		return true
	})
	return found, ok
}

func lookupGroup(files FileReader, name string) (int, bool) {
	if files == nil {
		return 0, false
	}
	data, err := files.ReadFile("/etc/group")
	if err != nil {
		return 0, false
	}
	gid, ok := 0, false
	ScanColonFile(data, func(f []string) bool {
		if len(f) >= 3 && f[0] == name {
			if g, err := strconv.Atoi(f[2]); err == nil {
				gid, ok = g, true
				return false
			}
		}
		return true
	})
	return gid, ok
}

// ScanColonFile calls fn with the fields of each line of an
// /etc/passwd-style file, skipping blank lines and comments, until fn
// returns false.
func ScanColonFile(data []byte, fn func([]string) bool) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if !fn(strings.Split(line, ":")) {
			return
		}
	}
}
