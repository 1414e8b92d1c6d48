package builder

import (
	"fmt"
	"sort"
	"strings"

	"github.com/moby/buildkit/util/suggest"
)

// NoStageError is the error of a FROM, COPY --from or RUN --mount from=
// naming no stage and no image that could be found, where the name looks
// like a misspelt stage name: it says which stage was likely meant. Err
// is why the name did not resolve as an image.
type NoStageError struct {
	// Name is the reference as written; Closest the stage it resembles.
	Name, Closest string
	Err           error
}

func (e *NoStageError) Error() string {
	return fmt.Sprintf("no stage named %q (did you mean %q?), and no image by that name: %v", e.Name, e.Closest, e.Err)
}

func (e *NoStageError) Unwrap() error { return e.Err }

// closestStage is the name of the stage that ref, which names no stage,
// most likely misspells ("biuld" for "build"), or "" when ref does not
// look like a stage name: it has registry, tag or digest syntax ('/', ':',
// '@'), or no stage name is within BuildKit's suggestion distance.
func (b *build) closestStage(ref string) string {
	if ref == "" || strings.ContainsAny(ref, "/:@") || len(b.byName) == 0 {
		return ""
	}
	names := make([]string, 0, len(b.byName))
	for n := range b.byName {
		names = append(names, n)
	}
	sort.Strings(names) // ties go to the first in order, every time
	s, _ := suggest.Search(strings.ToLower(ref), names, true)
	return s
}

// stageHint wraps err, the failure to resolve ref as an image, in a
// NoStageError when ref looks like a misspelt stage name.
func (b *build) stageHint(ref string, err error) error {
	if s := b.closestStage(ref); s != "" {
		return &NoStageError{Name: ref, Closest: s, Err: err}
	}
	return err
}
