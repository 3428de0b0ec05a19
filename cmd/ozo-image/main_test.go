package main

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The image is built as `make image` builds it, read back as a registry client would read the
// OCI layout, and its binary is run from the extracted layer: it serves the identity API from
// SQLite in a directory of its own, with the working directory read-only.
func TestImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "ozo-identity.tar")
	var log bytes.Buffer
	if err := run(context.Background(), []string{"--out", out, "--tag", "ozo-identity:test"}, &log); err != nil {
		t.Fatalf("build: %v\n%s", err, log.String())
	}
	t.Log(strings.TrimSpace(log.String()))

	layoutDir := filepath.Join(dir, "layout")
	untar(t, out, layoutDir)
	idx, err := layout.ImageIndexFromPath(layoutDir)
	if err != nil {
		t.Fatalf("not an OCI layout: %v", err)
	}
	im, err := idx.IndexManifest()
	if err != nil || len(im.Manifests) != 1 {
		t.Fatalf("index: %v, %d manifests", err, len(im.Manifests))
	}
	desc := im.Manifests[0]
	if desc.MediaType != types.OCIManifestSchema1 || desc.Annotations["org.opencontainers.image.ref.name"] != "ozo-identity:test" ||
		desc.Platform == nil || desc.Platform.OS != "linux" {
		t.Errorf("manifest descriptor %+v", desc)
	}
	img, err := idx.Image(desc.Digest)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if c.User != "65532:65532" {
		t.Errorf("user %q, want the nonroot 65532:65532", c.User)
	}
	if !slices.Equal(c.Entrypoint, []string{"/usr/local/bin/ozo-identity"}) || !slices.Equal(c.Cmd, []string{"serve"}) {
		t.Errorf("entrypoint %q cmd %q, want ozo-identity serve", c.Entrypoint, c.Cmd)
	}
	if _, ok := c.Volumes["/data"]; !ok || !slices.Contains(c.Env, "OZO_DATA_DIR=/data") {
		t.Errorf("volumes %v env %v: /data is not the data directory", c.Volumes, c.Env)
	}

	// The layer as a container runtime unpacks it.
	root := filepath.Join(dir, "rootfs")
	headers := extract(t, mutate.Extract(img), root)
	if h := headers["data"]; h == nil || h.Uid != 65532 || h.Gid != 65532 || h.Mode&0o700 != 0o700 {
		t.Errorf("/data header %+v: not writable by 65532", h)
	}
	if h := headers["tmp"]; h == nil || h.Mode&0o1777 != 0o1777 {
		t.Errorf("/tmp header %+v: not sticky and world-writable", h)
	}
	for name, want := range map[string]string{"etc/passwd": "nonroot:x:65532:65532:", "etc/group": "nonroot:x:65532:",
		"etc/ssl/certs/ca-certificates.crt": "-----BEGIN CERTIFICATE-----"} {
		data, err := os.ReadFile(filepath.Join(root, name))
		if err != nil || !strings.Contains(string(data), want) {
			t.Errorf("%s: %v, lacks %q", name, err, want)
		}
	}
	bin := filepath.Join(root, "usr/local/bin/ozo-identity")
	if f, err := elf.Open(bin); err != nil {
		t.Fatal(err)
	} else {
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Error("binary is dynamically linked (has an interpreter); want CGO_ENABLED=0")
			}
		}
		f.Close()
	}

	// Run it: only the data directory and TMPDIR are writable to it.
	data, tmp, cwd := filepath.Join(dir, "data"), filepath.Join(dir, "tmp"), filepath.Join(dir, "ro")
	for _, d := range []string{data, tmp, cwd} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(cwd, 0o555); err != nil {
		t.Fatal(err)
	}
	listen, ops := freeAddr(t), freeAddr(t)
	cmd := exec.Command(bin, "serve")
	cmd.Dir = cwd
	cmd.Env = []string{"OZO_DATA_DIR=" + data, "TMPDIR=" + tmp, "OZO_LISTEN=" + listen, "OZO_METRICS_LISTEN=" + ops, "OZO_LOG_FORMAT=json"}
	var serveLog bytes.Buffer
	cmd.Stdout, cmd.Stderr = &serveLog, &serveLog
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	body := waitGet(t, "http://"+listen+"/_matrix/identity/v2", &serveLog)
	var got map[string]any
	if err := json.Unmarshal(body, &got); err != nil || len(got) != 0 {
		t.Errorf("GET /_matrix/identity/v2 = %s (%v), want {}", body, err)
	}
	if out, err := exec.Command(bin, "healthcheck", "--url", "http://"+ops+"/readyz").CombinedOutput(); err != nil {
		t.Errorf("healthcheck: %v: %s", err, out)
	}
	if out, err := exec.Command(bin, "healthcheck", "--url", "http://"+ops+"/nowhere").CombinedOutput(); err == nil {
		t.Errorf("healthcheck of a 404 succeeded: %s", out)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("serve after SIGTERM: %v\n%s", err, serveLog.String())
	}
	entries, _ := os.ReadDir(data)
	if len(entries) == 0 {
		t.Errorf("nothing written to the data directory\n%s", serveLog.String())
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitGet(t *testing.T, url string, log *bytes.Buffer) []byte {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return body
			}
			err = errors.New(resp.Status)
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v\n%s", url, err, log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func untar(t *testing.T, file, dst string) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	extract(t, f, dst)
}

// extract unpacks a tar below dst (regular files and directories) and returns its headers by name.
func extract(t *testing.T, r io.Reader, dst string) map[string]*tar.Header {
	t.Helper()
	headers := map[string]*tar.Header{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return headers
		}
		if err != nil {
			t.Fatal(err)
		}
		headers[strings.TrimSuffix(h.Name, "/")] = h
		path := filepath.Join(dst, filepath.FromSlash(h.Name))
		if !strings.HasPrefix(path, filepath.Clean(dst)+string(filepath.Separator)) {
			t.Fatalf("tar entry %q leaves the directory", h.Name)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(path, 0o755); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			w, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(h.Mode)&0o755|0o600)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(w, tr); err != nil {
				t.Fatal(err)
			}
			w.Close()
		}
	}
}
