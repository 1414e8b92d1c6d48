package builder

import (
	"time"

	"github.com/ibuild/ibuild/builder/progress"
	"github.com/ibuild/ibuild/registry"
)

// TransferProgress turns the layer transfers of registry.Pull and Push
// (PullOptions.Transfers, PushOptions.Transfers) into Transfer and
// TransferDone events on sink, so a progress renderer shows each layer's
// bytes and rate. A build does this itself for its pulls and pushes.
func TransferProgress(sink progress.Sink) func(registry.Transfer) {
	if sink == nil {
		return nil
	}
	return func(t registry.Transfer) {
		kind := progress.Transfer
		if t.Finished {
			kind = progress.TransferDone
		}
		sink.Emit(progress.Event{Kind: kind, Time: time.Now(), Action: t.Action, Ref: t.Ref,
			Digest: t.Digest.String(), LayerSize: t.Size, Bytes: t.Done, Duration: t.Elapsed})
	}
}
