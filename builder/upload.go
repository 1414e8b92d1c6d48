package builder

import (
	"context"

	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/registry"
)

// layerUpload is, for a stage whose layers the result carries in a build
// that pushes, what starts the streamed upload of each layer it commits
// to the first push destination's repository (see registry.Upload): the
// layer goes to the registry while it is compressed, and the push that
// ends the build finds it there. nil for other stages and builds.
func (b *build) layerUpload(exported bool) func(context.Context) layers.BlobSink {
	dest := ""
	switch {
	case !exported:
		return nil
	case len(b.opts.Push) > 0:
		dest = b.opts.Push[0]
	case len(b.opts.PushByDigest) > 0:
		dest = b.opts.PushByDigest[0]
	default:
		return nil
	}
	conn := b.opts.pushOptions().Conn
	log := b.opts.pullProgress()
	return func(ctx context.Context) layers.BlobSink {
		u, err := registry.StartUpload(ctx, dest, conn)
		if err != nil {
			if log != nil {
				log("layer upload not streamed (the push uploads it): " + err.Error())
			}
			return nil
		}
		return &loggedSink{Upload: u, log: log}
	}
}

// loggedSink reports why a streamed upload did not complete: the push
// uploads the blob then, so it is news, not a warning.
type loggedSink struct {
	*registry.Upload
	log func(string)
}

func (s *loggedSink) Close(d layers.Descriptor, err error) error {
	cerr := s.Upload.Close(d, err)
	if cerr != nil && err == nil && s.log != nil {
		s.log("layer upload not streamed (the push uploads it): " + cerr.Error())
	}
	return cerr
}
