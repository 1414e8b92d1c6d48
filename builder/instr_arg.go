package builder

import (
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
)

// arg runs ARG: it declares variables for the rest of the stage. The value
// is, in order: --build-arg, the default written here, the value of the
// same ARG before the first FROM, an automatic platform arg. ARG values are
// never written to the image.
func (s *stageRun) arg(c *instructions.ArgCommand) error {
	env := s.scope()
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
			env.Set(kv.Key, v)
			continue
		}
		if v, ok := s.b.meta.Get(kv.Key); ok {
			s.args.Set(kv.Key, v)
			env.Set(kv.Key, v)
		}
	}
	// Like BuildKit, ARG adds no history entry.
	return nil
}
