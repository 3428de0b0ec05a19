// Package archtest owns the import rules of design.md §2: domain packages never reach the HTTP
// layer, the composition root or the SQL store, so that every store stays behind its port.
package archtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strings"
)

// Domain lists the domain packages (with their sub-packages), relative to the module; those
// not written yet are simply absent.
var Domain = []string{"identity", "threepid", "lookup", "audit", "sso", "saml", "dezi", "ozoaccount"}

// Forbidden lists what a domain package must not import, directly or not (sub-packages too).
var Forbidden = []string{"api", "app", "storage/sqlstore"}

// Violation is one forbidden dependency of a domain package.
type Violation struct {
	Package, Imports string
}

func (v Violation) String() string { return v.Package + " imports " + v.Imports }

type listed struct {
	ImportPath string
	Deps       []string
	Module     *struct{ Path string }
	Error      *struct{ Err string }
}

// Check lists the packages of the module in dir with go list (build files only, not tests,
// which may wire real stores) and returns every domain package's forbidden dependency.
func Check(dir string) ([]Violation, error) {
	cmd := exec.Command("go", "list", "-e", "-deps=false", "-json=ImportPath,Deps,Module,Error", "./...")
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list in %s: %w: %s", dir, err, stderr.String())
	}
	var vs []Violation
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p listed
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("go list in %s: %w", dir, err)
		}
		if p.Error != nil {
			return nil, fmt.Errorf("go list in %s: %s", dir, p.Error.Err)
		}
		if p.Module == nil {
			continue
		}
		if !under(rel(p.ImportPath, p.Module.Path), Domain) {
			continue
		}
		for _, d := range p.Deps {
			if r, ok := strings.CutPrefix(d, p.Module.Path+"/"); ok && under(r, Forbidden) {
				vs = append(vs, Violation{Package: rel(p.ImportPath, p.Module.Path), Imports: r})
			}
		}
	}
	return vs, nil
}

func rel(path, module string) string {
	return strings.TrimPrefix(strings.TrimPrefix(path, module), "/")
}

// under reports whether p is one of roots or inside one.
func under(p string, roots []string) bool {
	return slices.ContainsFunc(roots, func(r string) bool { return p == r || strings.HasPrefix(p, r+"/") })
}
