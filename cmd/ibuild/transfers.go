package main

import (
	"io"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ibuild/ibuild/builder"
	"github.com/ibuild/ibuild/builder/progress"
	"github.com/ibuild/ibuild/registry"
)

// progressFlag picks how pull and push show their progress.
var progressFlag = &cli.StringFlag{Name: "progress", Value: "auto", Usage: "progress output: auto, plain (a line per layer), tty (each layer's bytes and rate, redrawn) or json"}

// registryProgress is how pull, push and commit --push report: step lines
// and layer transfers through the --progress renderer on stderr; nothing
// with --quiet. Call done when the transfer is over.
func registryProgress(c *cli.Context) (lines func(string), transfers func(registry.Transfer), done func(), err error) {
	if c.Bool("quiet") {
		return nil, nil, func() {}, nil
	}
	sink, err := progress.New(c.String("progress"), os.Stderr)
	if err != nil {
		return nil, nil, nil, err
	}
	lines = func(msg string) { sink.Emit(progress.Event{Kind: progress.Log, Time: time.Now(), Message: msg}) }
	done = func() {
		if cl, ok := sink.(io.Closer); ok {
			cl.Close()
		}
	}
	return lines, builder.TransferProgress(sink), done, nil
}
