package main

import (
	"slices"
	"strings"
	"testing"
)

func TestInterspersed(t *testing.T) {
	app := newApp()
	tests := []struct {
		name string
		in   string
		want string
	}{
		{"flags after the context", "build ./app -t x:1 --progress plain", "build -t x:1 --progress plain ./app"},
		{"flags first: unchanged", "build -t x:1 ./app", "build -t x:1 ./app"},
		{"flag=value and a boolean", "build ./app --tag=x -q --no-cache", "build --tag=x -q --no-cache ./app"},
		{"global flags stay", "--root /r build ./app -t x", "--root /r build -t x ./app"},
		{"alias", "bud . -f Containerfile", "bud -f Containerfile ."},
		{"stdin context", "build - -t x", "build -t x -"},
		{"-- ends flags", "build ./app -- -t", "build ./app -- -t"},
		{"push", "push app:1 reg.io/app:1 --format docker -q", "push --format docker -q app:1 reg.io/app:1"},
		{"run keeps the command's flags", "run ctr ls -l --color", "run ctr ls -l --color"},
		{"run flags before the name", "run --user 0 ctr -- sh -c 'x'", "run --user 0 ctr -- sh -c 'x'"},
		{"run with --", "run ctr -- sh -c -x", "run ctr -- sh -c -x"},
		{"unshare", "unshare sh -c id", "unshare sh -c id"},
		{"unknown flag keeps its place among flags", "build . --bogus -t x", "build --bogus -t x ."},
		{"unknown command", "nope . -t x", "nope . -t x"},
		{"value that looks like a flag", "build . --build-arg -x -t y", "build --build-arg -x -t y ."},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := append([]string{"ibuild"}, strings.Fields(tc.in)...)
			got := interspersed(app, slices.Clone(in))
			want := append([]string{"ibuild"}, strings.Fields(tc.want)...)
			if !slices.Equal(got, want) {
				t.Errorf("interspersed(%q)\n got %q\nwant %q", tc.in, got, want)
			}
		})
	}
}
