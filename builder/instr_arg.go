package builder

import (
	"github.com/moby/buildkit/frontend/dockerfile/instructions"

	"github.com/ibuild/ibuild/builder/dockerfile"
)

// arg runs ARG: it declares variables for the rest of the stage. The value
// is, in order: --build-arg, the default written here, the value of the
// same ARG before the first FROM, an automatic platform arg. ARG values are
// never written to the image.
func (s *stageRun) arg(c *instructions.ArgCommand) error {
	// The values set here win over ENV for the instruction's later pairs.
	env := argScope{set: &dockerfile.Vars{}, under: s.view()}
	words := s.b.exp.Words(env)
	for _, kv := range c.Args {
		if v, ok := s.b.opts.BuildArgs[kv.Key]; ok {
			s.args.Set(kv.Key, v)
			s.b.markUsed(kv.Key)
			continue
		}
		if kv.Value != nil {
			v, err := words.Word(*kv.Value)
			if err != nil {
				return err
			}
			s.args.Set(kv.Key, v)
			env.set.Set(kv.Key, v)
			continue
		}
		if v, ok := s.b.meta.Get(kv.Key); ok {
			s.args.Set(kv.Key, v)
			env.set.Set(kv.Key, v)
		}
	}
	// Like BuildKit, ARG adds no history entry.
	return nil
}

// argScope is the scope an ARG instruction expands against: the values
// its earlier pairs set, over the stage's scope.
type argScope struct {
	set   *dockerfile.Vars
	under scopeView
}

func (a argScope) Get(k string) (string, bool) {
	if v, ok := a.set.Get(k); ok {
		return v, true
	}
	return a.under.Get(k)
}

func (a argScope) Keys() []string {
	keys := a.under.Keys()
	for _, k := range a.set.Keys() {
		if _, ok := a.under.Get(k); !ok {
			keys = append(keys, k)
		}
	}
	return keys
}
