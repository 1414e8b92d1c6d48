package main

import (
	"errors"
	"fmt"

	"github.com/ibuild/ibuild/registry"
)

// errorHint says, in the command's terms, how to get past err ("" when
// there is nothing to add): the library's errors name what happened and
// which option matters, the command names its commands and flags.
func errorHint(err error) string {
	var ae *registry.AuthError
	if errors.As(err, &ae) {
		if ae.Anonymous {
			return fmt.Sprintf("log in with 'ibuild login %s', or name an auth file holding credentials for it with --authfile", ae.Registry)
		}
		return fmt.Sprintf("the credentials were refused: 'ibuild login %s' replaces them, or --authfile names another auth file", ae.Registry)
	}
	return ""
}
