//go:build ignore

// doccheck reports doc comments that start with the name of another
// function or type than the one they document (a name declared in the
// package, or a camelCase word): a function renamed while
// its comment kept the old name ("// historyText is ..." above func
// cmdText). go vet does not check this. Usage: go run .ci/doccheck.go DIR
// (make lint runs it); it exits 1 after listing what it found.
package main

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"unicode"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: go run .ci/doccheck.go DIR")
		os.Exit(2)
	}
	files := map[string][]*ast.File{} // by directory: a package's names
	fset := token.NewFileSet()
	err := filepath.WalkDir(os.Args[1], func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p != os.Args[1] && strings.HasPrefix(d.Name(), ".") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, parser.ParseComments)
		if err != nil {
			return err
		}
		files[filepath.Dir(p)] = append(files[filepath.Dir(p)], f)
		return nil
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "doccheck:", err)
		os.Exit(2)
	}
	bad := 0
	for _, fs := range files {
		names := map[string]bool{}
		for _, f := range fs {
			for _, d := range f.Decls {
				for _, n := range declNames(d) {
					names[n.name] = true
				}
			}
		}
		for _, f := range fs {
			for _, d := range f.Decls {
				for _, n := range declNames(d) {
					if n.doc == nil || strings.HasPrefix(n.name, "Example") {
						continue
					}
					first := strings.TrimRight(strings.Fields(n.doc.Text() + " x")[0], ".,:;")
					if first != n.name && isName(first) && (names[first] || camelCase(first)) {
						fmt.Printf("%s: the doc comment of %s starts with %s\n", fset.Position(n.pos), n.name, first)
						bad++
					}
				}
			}
		}
	}
	if bad > 0 {
		os.Exit(1)
	}
}

type named struct {
	name string
	doc  *ast.CommentGroup
	pos  token.Pos
}

// declNames lists the functions and types d declares, with their docs.
func declNames(d ast.Decl) []named {
	switch d := d.(type) {
	case *ast.FuncDecl:
		return []named{{d.Name.Name, d.Doc, d.Pos()}}
	case *ast.GenDecl:
		var out []named
		for _, sp := range d.Specs {
			if ts, ok := sp.(*ast.TypeSpec); ok {
				doc := ts.Doc
				if doc == nil && len(d.Specs) == 1 {
					doc = d.Doc
				}
				out = append(out, named{ts.Name.Name, doc, ts.Pos()})
			}
		}
		return out
	}
	return nil
}

// camelCase reports whether s has an upper-case letter after its first
// character, as Go names (cmdText, ParseFormat) do and words do not.
func camelCase(s string) bool {
	for i, r := range s {
		if i > 0 && unicode.IsUpper(r) {
			return true
		}
	}
	return false
}

func isName(s string) bool {
	for i, r := range s {
		if !unicode.IsLetter(r) && r != '_' && (i == 0 || !unicode.IsDigit(r)) {
			return false
		}
	}
	return s != ""
}
