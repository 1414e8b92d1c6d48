// Command libuserns is a program of its own that imports ibuild as a
// library and builds a Dockerfile with RUN steps as an ordinary user:
// usage `libuserns STORE CONTEXT OCI-DIR`. It is what docs/library.md
// shows; TestLibraryRunsAsUnprivilegedUser builds it as a separate module
// and runs it as a user with a subordinate id range.
package main

import (
	"context"
	"fmt"
	"log"
	"os"

	"go.podman.io/storage/pkg/reexec"

	"github.com/ibuild/ibuild/builder"
	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/registry"
)

func main() {
	if reexec.Init() { // RUN steps run in a re-executed copy of the program
		return
	}
	if len(os.Args) != 4 {
		log.Fatal("usage: libuserns STORE CONTEXT OCI-DIR")
	}
	// As an ordinary user, re-execute this program as root of a user
	// namespace mapping the user's /etc/subuid range; as root, go on.
	if err := builder.MaybeReexecUsingUserNamespace(builder.ReexecOptions{
		Isolation: builder.IsolationAuto,
		Warn:      func(msg string) { log.Print("warning: ", msg) },
	}); err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	st, err := layers.OpenStore(ctx, os.Args[1])
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	out, err := registry.ParseOutput("type=oci,tar=false,dest=" + os.Args[3])
	if err != nil {
		log.Fatal(err)
	}
	res, err := builder.Build(ctx, builder.Options{Store: st, ContextDir: os.Args[2], Outputs: []registry.Output{out}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.ID)
}
