package registry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// AuthError is a registry refusing an operation on a repository for lack
// of credentials, or for the credentials given (HTTP 401 or 403).
type AuthError struct {
	// Registry is the registry host as users write it (docker.io, not
	// index.docker.io); Repository the repository path on it.
	Registry, Repository string
	// Action is "pull" or "push".
	Action string
	// Status is the HTTP status: 401 or 403.
	Status int
	// Anonymous is true when no credentials were found for Registry.
	Anonymous bool
	// Err is the registry's answer.
	Err error
}

func (e *AuthError) Error() string {
	if e.Anonymous {
		return fmt.Sprintf("registry %s refused to %s %s: %s (no credentials for %s were found)", e.Registry, e.Action, e.Repository, answer(e.Err, e.Status), e.Registry)
	}
	return fmt.Sprintf("registry %s refused to %s %s with the credentials found for it: %s", e.Registry, e.Action, e.Repository, answer(e.Err, e.Status))
}

func (e *AuthError) Unwrap() error { return e.Err }

// TagNotFoundError is a tag the repository does not have.
type TagNotFoundError struct {
	// Reference is the full reference, Tag its tag.
	Reference, Tag string
	// Tags are tags the registry lists for the repository: the first page
	// of the list, at most maxListedTags. More is true when it has more.
	Tags []string
	More bool
	// NoRepository is true when the registry lists no tags because the
	// repository does not exist (or is not visible to the credentials).
	NoRepository bool
	// Err is the registry's answer to the manifest request.
	Err error
}

// maxListedTags bounds the tags a TagNotFoundError lists and asks for.
const maxListedTags = 20

func (e *TagNotFoundError) Error() string {
	repo := e.Reference
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo = repo[:i]
	}
	msg := fmt.Sprintf("repository %s has no tag %q", repo, e.Tag)
	switch {
	case e.NoRepository:
		return fmt.Sprintf("repository %s does not exist (or is not visible to these credentials)", repo)
	case len(e.Tags) == 0:
		return msg + ", and lists no tags"
	case e.More:
		return fmt.Sprintf("%s; its tags include %s, ...", msg, strings.Join(e.Tags, ", "))
	}
	return fmt.Sprintf("%s; its tags: %s", msg, strings.Join(e.Tags, ", "))
}

func (e *TagNotFoundError) Unwrap() error { return e.Err }

// explain turns a registry's error answer to action ("pull" or "push") of
// r into an error that says what happened in words: an AuthError for 401
// and 403, a TagNotFoundError (with the tags the registry lists) for a
// missing tag, and the registry's error codes and messages without the Go
// maps of their details otherwise. Other errors are returned unchanged.
func explain(ctx context.Context, err error, r name.Reference, action string, conn Conn) error {
	var te *transport.Error
	if !errors.As(err, &te) {
		return err
	}
	repo := r.Context()
	switch {
	case te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden || hasCode(te, transport.UnauthorizedErrorCode, transport.DeniedErrorCode):
		auth, kerr := conn.keychain().Resolve(repo)
		return &AuthError{
			Registry: registryHost(r), Repository: repo.RepositoryStr(), Action: action,
			Status: te.StatusCode, Anonymous: kerr == nil && auth == authn.Anonymous, Err: err,
		}
	case te.StatusCode == http.StatusNotFound && action == "pull":
		tag, ok := r.(name.Tag)
		if !ok || te.Request == nil || !strings.HasSuffix(te.Request.URL.Path, "/manifests/"+tag.TagStr()) {
			break
		}
		nf := &TagNotFoundError{Reference: CanonicalName(r), Tag: tag.TagStr(), Err: err}
		nf.Tags, nf.More, nf.NoRepository = listSomeTags(ctx, repo, conn)
		return nf
	}
	return &plainError{err: err, te: te}
}

// listSomeTags returns the first page (at most maxListedTags) of repo's
// tags, whether there are more, and whether the registry says the
// repository does not exist. Errors listing give no tags.
func listSomeTags(ctx context.Context, repo name.Repository, conn Conn) (tags []string, more, noRepo bool) {
	opts := append(conn.remoteOptions(ctx, 1), remote.WithPageSize(maxListedTags))
	p, err := remote.NewPuller(opts...)
	if err != nil {
		return nil, false, false
	}
	l, err := p.Lister(ctx, repo)
	if err == nil {
		var page *remote.Tags
		if page, err = l.Next(ctx); err == nil && page != nil {
			tags = page.Tags
			more = page.Next != "" || len(tags) > maxListedTags
			if len(tags) > maxListedTags {
				tags = tags[:maxListedTags]
			}
			slices.Sort(tags)
			return tags, more, false
		}
	}
	var te *transport.Error
	return nil, false, errors.As(err, &te) && (te.StatusCode == http.StatusNotFound || hasCode(te, transport.NameUnknownErrorCode))
}

func hasCode(te *transport.Error, codes ...transport.ErrorCode) bool {
	for _, d := range te.Errors {
		for _, c := range codes {
			if d.Code == c {
				return true
			}
		}
	}
	return false
}

// answer is a registry's answer in words: the status, then its error
// codes and messages (details only when they are text).
func answer(err error, status int) string {
	s := fmt.Sprintf("%d %s", status, http.StatusText(status))
	var te *transport.Error
	if !errors.As(err, &te) {
		return s
	}
	for i, d := range te.Errors {
		if i == 0 {
			s += ": "
		} else {
			s += "; "
		}
		s += string(d.Code) + ": " + d.Message
		if detail, ok := d.Detail.(string); ok && detail != "" {
			s += " (" + detail + ")"
		}
	}
	return s
}

// plainError is a registry's error answer as "METHOD URL: status: codes
// and messages", without the Go maps of their details.
type plainError struct {
	err error
	te  *transport.Error
}

func (e *plainError) Error() string {
	msg := e.err.Error()
	if len(e.te.Errors) == 0 {
		return msg // the status, or the raw body
	}
	clean := answer(e.te, e.te.StatusCode)
	if e.te.Request != nil {
		clean = e.te.Request.Method + " " + e.te.Request.URL.Redacted() + ": " + clean
	}
	// Keep what wraps the registry's answer ("layer sha256:...: ").
	return strings.Replace(msg, e.te.Error(), clean, 1)
}

func (e *plainError) Unwrap() error { return e.err }
