package builder

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// owner is a numeric uid/gid pair as stored in a layer.
type owner struct {
	UID, GID int
}

// fileReader reads a file of the image; nil means the image has no files
// (FROM scratch).
type fileReader interface {
	ReadFile(p string) ([]byte, error)
}

// resolveOwner resolves a --chown value, or the USER a WORKDIR is made
// for, "user[:group]" (names or ids) against the image's /etc/passwd and
// /etc/group, as BuildKit does for file operations: a user without a group
// gets the user's primary group (a numeric user the same number); a user
// name the image does not have (or an image without /etc/passwd) gives
// 0:0, and an unknown group name leaves the user's group. (RUN resolves
// USER strictly: resolveRunUser.)
func resolveOwner(spec string, files fileReader) (owner, error) {
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	if userPart == "" && !hasGroup {
		return owner{}, fmt.Errorf("empty user")
	}
	var o owner
	uid, uidErr := strconv.Atoi(userPart)
	switch {
	case userPart == "":
		o.UID = 0
	case uidErr == nil:
		if uid < 0 {
			return owner{}, fmt.Errorf("invalid uid %q", userPart)
		}
		// A numeric user without a group gets the same number as its
		// group, without consulting /etc/passwd (BuildKit's rule).
		o.UID = uid
		o.GID = uid
	default:
		if e, ok := lookupPasswd(files, userPart, -1); ok {
			o.UID, o.GID = e.uid, e.gid
		}
	}
	if !hasGroup {
		return o, nil
	}
	if gid, err := strconv.Atoi(groupPart); err == nil {
		if gid < 0 {
			return owner{}, fmt.Errorf("invalid gid %q", groupPart)
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

// resolveGroup resolves a group name or id strictly, for RUN.
func resolveGroup(group string, files fileReader) (int, error) {
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

type passwdEntry struct {
	name     string
	uid, gid int
	home     string
}

func lookupPasswd(files fileReader, name string, uid int) (passwdEntry, bool) {
	if files == nil {
		return passwdEntry{}, false
	}
	data, err := files.ReadFile("/etc/passwd")
	if err != nil {
		return passwdEntry{}, false
	}
	var found passwdEntry
	ok := false
	scanColonFile(data, func(f []string) bool {
		if len(f) < 4 {
			return true
		}
		u, err1 := strconv.Atoi(f[2])
		g, err2 := strconv.Atoi(f[3])
		if err1 != nil || err2 != nil {
			return true
		}
		if (name != "" && f[0] == name) || (name == "" && u == uid) {
			found = passwdEntry{name: f[0], uid: u, gid: g}
			if len(f) > 5 {
				found.home = f[5]
			}
			ok = true
			return false
		}
		return true
	})
	return found, ok
}

func lookupGroup(files fileReader, name string) (int, bool) {
	if files == nil {
		return 0, false
	}
	data, err := files.ReadFile("/etc/group")
	if err != nil {
		return 0, false
	}
	gid, ok := 0, false
	scanColonFile(data, func(f []string) bool {
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

func scanColonFile(data []byte, fn func([]string) bool) {
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
