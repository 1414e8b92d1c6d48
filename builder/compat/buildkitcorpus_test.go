package compat

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/ibuild/ibuild/builder/internal/oracle"
)

// buildkitCases extracts cases from BuildKit's Dockerfile integration
// tests (frontend/dockerfile/*_test.go of the module at the oracle's Version):
// each f.Solve call of a test function becomes a case with the Dockerfile
// and context files the function wrote before the call
// (integration.Tmpdir with fstest.CreateFile, CreateDir and Symlink) and
// the frontend options it passed (build args, target, platform, Dockerfile
// name). Only what can be evaluated statically is taken: a function whose
// inputs come from loops, other helpers or run-time values yields a
// skipped case saying why. The files are written under a temporary
// directory; the case name is buildkit/<function>[#n] (n counting the
// function's Solve calls from 2).
func buildkitCases(t *testing.T) []*compatCase {
	t.Helper()
	src := filepath.Join(oracle.ModuleDir(t, oracle.Module, oracle.Version), "frontend", "dockerfile")
	files, err := filepath.Glob(filepath.Join(src, "*_test.go"))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	root := t.TempDir()
	var out []*compatCase
	fset := token.NewFileSet()
	for _, file := range files {
		f, err := parser.ParseFile(fset, file, nil, 0)
		if err != nil {
			t.Fatalf("parse %s: %v", file, err)
		}
		for _, d := range f.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok || fn.Body == nil || !strings.HasPrefix(fn.Name.Name, "test") || fn.Recv != nil {
				continue
			}
			x := &extractor{fn: fn.Name.Name, origin: oracle.Module + "@" + oracle.Version + " frontend/dockerfile/" + filepath.Base(file) + ": " + fn.Name.Name,
				root: root, vars: map[string]string{}, dirs: map[string]*tmpdir{}}
			out = append(out, x.cases(fn.Body)...)
		}
	}
	return out
}

// tmpdir is an integration.Tmpdir call: its file operations, or why they
// could not be evaluated.
type tmpdir struct {
	ops     []fileOp
	invalid string
	path    string // where it was written, once written
}

type fileOp struct {
	kind       string // "file", "dir", "symlink"
	name, data string
	perm       os.FileMode
}

type extractor struct {
	fn, origin string
	root       string
	vars       map[string]string // string-valued locals
	dirs       map[string]*tmpdir
	n          int
	windows    bool
}

func (x *extractor) cases(body *ast.BlockStmt) []*compatCase {
	var out []*compatCase
	for _, st := range body.List {
		if x.skipCall(st) {
			return nil
		}
		if as, ok := st.(*ast.AssignStmt); ok && len(as.Lhs) == len(as.Rhs) {
			for i, l := range as.Lhs {
				id, ok := l.(*ast.Ident)
				if !ok {
					continue
				}
				if td := x.tmpdir(as.Rhs[i]); td != nil {
					x.dirs[id.Name] = td
					continue
				}
				if s, err := x.str(as.Rhs[i]); err == nil {
					x.vars[id.Name] = s
				} else {
					delete(x.vars, id.Name)
				}
			}
		}
		ast.Inspect(st, func(n ast.Node) bool {
			if _, ok := n.(*ast.FuncLit); ok {
				return false
			}
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || sel.Sel.Name != "Solve" || len(call.Args) < 3 {
				return true
			}
			if id, ok := sel.X.(*ast.Ident); !ok || id.Name != "f" {
				return true
			}
			out = append(out, x.solveCase(call.Args[2]))
			return false
		})
	}
	return out
}

// skipCall reports integration.SkipOnPlatform(t, "!windows"): a test
// for Windows only.
func (x *extractor) skipCall(st ast.Stmt) bool {
	es, ok := st.(*ast.ExprStmt)
	if !ok {
		return false
	}
	call, ok := es.X.(*ast.CallExpr)
	if !ok || !isSel(call.Fun, "integration", "SkipOnPlatform") || len(call.Args) < 2 {
		return false
	}
	s, err := x.str(call.Args[1])
	return err == nil && s == "!windows"
}

func isSel(e ast.Expr, pkg, name string) bool {
	sel, ok := e.(*ast.SelectorExpr)
	if !ok || sel.Sel.Name != name {
		return false
	}
	id, ok := sel.X.(*ast.Ident)
	return ok && id.Name == pkg
}

// str evaluates a string-valued expression of the forms the tests use.
func (x *extractor) str(e ast.Expr) (string, error) {
	switch e := e.(type) {
	case *ast.BasicLit:
		if e.Kind == token.STRING {
			return strconv.Unquote(e.Value)
		}
		if e.Kind == token.INT {
			return e.Value, nil
		}
	case *ast.ParenExpr:
		return x.str(e.X)
	case *ast.Ident:
		if v, ok := x.vars[e.Name]; ok {
			return v, nil
		}
		return "", fmt.Errorf("%s is not a known string", e.Name)
	case *ast.BinaryExpr:
		if e.Op == token.ADD {
			a, err := x.str(e.X)
			if err != nil {
				return "", err
			}
			b, err := x.str(e.Y)
			return a + b, err
		}
	case *ast.CallExpr:
		switch {
		case isConversion(e.Fun) && len(e.Args) == 1:
			return x.str(e.Args[0])
		case isSel(e.Fun, "integration", "UnixOrWindows") && len(e.Args) == 2:
			return x.str(e.Args[0])
		case isSel(e.Fun, "fmt", "Sprintf") && len(e.Args) >= 1:
			format, err := x.str(e.Args[0])
			if err != nil {
				return "", err
			}
			var args []any
			for _, a := range e.Args[1:] {
				v, err := x.str(a)
				if err != nil {
					return "", err
				}
				args = append(args, v)
			}
			return fmt.Sprintf(format, args...), nil
		}
	}
	return "", fmt.Errorf("cannot evaluate %T statically", e)
}

// isConversion reports []byte(...) and string(...).
func isConversion(e ast.Expr) bool {
	switch f := e.(type) {
	case *ast.ArrayType:
		id, ok := f.Elt.(*ast.Ident)
		return ok && id.Name == "byte" && f.Len == nil
	case *ast.Ident:
		return f.Name == "string"
	}
	return false
}

// tmpdir evaluates integration.Tmpdir(t, ops...), nil for another
// expression.
func (x *extractor) tmpdir(e ast.Expr) *tmpdir {
	call, ok := e.(*ast.CallExpr)
	if !ok || !isSel(call.Fun, "integration", "Tmpdir") {
		return nil
	}
	td := &tmpdir{}
	if call.Ellipsis.IsValid() {
		td.invalid = "context files come from a slice"
		return td
	}
	for _, a := range call.Args[1:] {
		op, err := x.fileOp(a)
		if err != nil {
			td.invalid = err.Error()
			return td
		}
		td.ops = append(td.ops, op)
	}
	return td
}

func (x *extractor) fileOp(e ast.Expr) (fileOp, error) {
	call, ok := e.(*ast.CallExpr)
	if !ok {
		return fileOp{}, fmt.Errorf("context file from %T", e)
	}
	perm := func(e ast.Expr) (os.FileMode, error) {
		if c, ok := e.(*ast.CallExpr); ok && len(c.Args) == 1 {
			e = c.Args[0] // os.FileMode(0644)
		}
		lit, ok := e.(*ast.BasicLit)
		if !ok || lit.Kind != token.INT {
			return 0, fmt.Errorf("file mode is not a literal")
		}
		v, err := strconv.ParseUint(lit.Value, 0, 32)
		return os.FileMode(v), err
	}
	args := func(n int) ([]string, error) {
		if len(call.Args) != n+1 && !(n == 2 && len(call.Args) == 2) {
			return nil, fmt.Errorf("unexpected arguments")
		}
		var out []string
		for _, a := range call.Args[:n] {
			s, err := x.str(a)
			if err != nil {
				return nil, err
			}
			out = append(out, s)
		}
		return out, nil
	}
	switch {
	case isSel(call.Fun, "fstest", "CreateFile") && len(call.Args) == 3:
		s, err := args(2)
		if err != nil {
			return fileOp{}, err
		}
		p, err := perm(call.Args[2])
		return fileOp{kind: "file", name: s[0], data: s[1], perm: p}, err
	case isSel(call.Fun, "fstest", "CreateDir") && len(call.Args) == 2:
		name, err := x.str(call.Args[0])
		if err != nil {
			return fileOp{}, err
		}
		p, err := perm(call.Args[1])
		return fileOp{kind: "dir", name: name, perm: p}, err
	case isSel(call.Fun, "fstest", "Symlink") && len(call.Args) == 2:
		s, err := args(2)
		if err != nil {
			return fileOp{}, err
		}
		return fileOp{kind: "symlink", data: s[0], name: s[1]}, nil
	}
	return fileOp{}, fmt.Errorf("context file operation %s", exprString(call.Fun))
}

func exprString(e ast.Expr) string {
	if sel, ok := e.(*ast.SelectorExpr); ok {
		return exprString(sel.X) + "." + sel.Sel.Name
	}
	if id, ok := e.(*ast.Ident); ok {
		return id.Name
	}
	return fmt.Sprintf("%T", e)
}

// write materialises td under the extractor's root, once.
func (x *extractor) write(td *tmpdir) (string, error) {
	if td.path != "" {
		return td.path, nil
	}
	dir, err := os.MkdirTemp(x.root, x.fn+"-")
	if err != nil {
		return "", err
	}
	for _, op := range td.ops {
		p := filepath.Join(dir, op.name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return "", err
		}
		switch op.kind {
		case "file":
			err = os.WriteFile(p, []byte(op.data), op.perm)
			if err == nil {
				err = os.Chmod(p, op.perm)
			}
		case "dir":
			err = os.Mkdir(p, op.perm)
			if err == nil {
				err = os.Chmod(p, op.perm)
			}
		case "symlink":
			err = os.Symlink(op.data, p)
		}
		if err != nil {
			return "", err
		}
	}
	td.path = dir
	return dir, nil
}

// frontendOptions the suite passes on (others make the case skipped).
var ignoredAttrs = map[string]bool{"no-cache": true}

// solveCase turns one f.Solve(ctx, c, client.SolveOpt{...}) into a case.
func (x *extractor) solveCase(arg ast.Expr) *compatCase {
	x.n++
	c := &compatCase{Name: "buildkit/" + x.fn, Origin: x.origin}
	if x.n > 1 {
		c.Name += "#" + strconv.Itoa(x.n)
		c.Origin += fmt.Sprintf(" (Solve call %d)", x.n)
	}
	skip := func(format string, args ...any) *compatCase {
		c.Skip = fmt.Sprintf(format, args...)
		return c
	}
	lit, ok := arg.(*ast.CompositeLit)
	if !ok || !isSel(lit.Type, "client", "SolveOpt") {
		return skip("solve options are not a literal")
	}
	var ctxDir, dfDir *tmpdir
	filename := "Dockerfile"
	for _, el := range lit.Elts {
		kv, ok := el.(*ast.KeyValueExpr)
		if !ok {
			return skip("solve options are not keyed")
		}
		key := exprString(kv.Key)
		switch key {
		case "LocalMounts", "LocalDirs":
			m, ok := kv.Value.(*ast.CompositeLit)
			if !ok {
				return skip("local mounts are not a literal")
			}
			for _, e := range m.Elts {
				kv2, ok := e.(*ast.KeyValueExpr)
				if !ok {
					return skip("local mounts are not keyed")
				}
				id, ok := kv2.Value.(*ast.Ident)
				var td *tmpdir
				if ok {
					td = x.dirs[id.Name]
				}
				if td == nil {
					return skip("a local mount is not a directory made with integration.Tmpdir")
				}
				if td.invalid != "" {
					return skip("cannot extract the context: %s", td.invalid)
				}
				switch k := exprString(kv2.Key); {
				case k == "dockerui.DefaultLocalNameDockerfile" || strings.Contains(k, `"dockerfile"`):
					dfDir = td
				case k == "dockerui.DefaultLocalNameContext" || strings.Contains(k, `"context"`):
					ctxDir = td
				default:
					return skip("named local context %s (no ibuild counterpart)", k)
				}
			}
		case "FrontendAttrs":
			m, ok := kv.Value.(*ast.CompositeLit)
			if !ok {
				return skip("frontend options are not a literal")
			}
			for _, e := range m.Elts {
				kv2, ok := e.(*ast.KeyValueExpr)
				if !ok {
					return skip("frontend options are not keyed")
				}
				k, err := x.str(kv2.Key)
				if err != nil {
					return skip("frontend option key: %v", err)
				}
				v, err := x.str(kv2.Value)
				if err != nil {
					return skip("frontend option %s: %v", k, err)
				}
				switch {
				case strings.HasPrefix(k, "build-arg:"):
					if c.BuildArgs == nil {
						c.BuildArgs = map[string]string{}
					}
					c.BuildArgs[strings.TrimPrefix(k, "build-arg:")] = v
				case k == "target":
					c.Target = v
				case k == "platform":
					c.Platforms = strings.Split(v, ",")
				case k == "filename":
					filename = v
				case ignoredAttrs[k]:
				default:
					return skip("frontend option %q has no ibuild counterpart in the suite", k)
				}
			}
		case "Exports", "CacheExports", "CacheImports":
			// Where the result goes does not change it.
		default:
			return skip("solve option %s (secrets, sessions, named contexts) is not reproduced", key)
		}
	}
	if dfDir == nil || ctxDir == nil {
		return skip("no Dockerfile and context directories")
	}
	for k := range c.BuildArgs {
		if strings.HasPrefix(k, "BUILDKIT_") {
			return skip("build arg %s configures BuildKit itself", k)
		}
	}
	dir, err := x.write(dfDir)
	if err != nil {
		return skip("write inputs: %v", err)
	}
	c.Dockerfile = filepath.Join(dir, filename)
	if c.ContextDir, err = x.write(ctxDir); err != nil {
		return skip("write inputs: %v", err)
	}
	if _, err := os.Lstat(c.Dockerfile); err != nil {
		return skip("the test writes no %s", filename)
	}
	analyse(c)
	return c
}
