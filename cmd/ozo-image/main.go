// Command ozo-image builds ozo-identity's container image without a Docker daemon or network:
// one layer holding the static binary, /etc/passwd and /etc/group with the nonroot user (65532),
// the build machine's CA certificates and a /data directory that user owns; written as an OCI
// image layout in a tar file (`docker load`, `podman load`, `skopeo copy oci-archive:`).
//
//	ozo-image [--out ozo-identity.tar] [--tag ozo-identity:dev] [--binary FILE] [--ca-file FILE]
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The nonroot user of distroless, so that the Dockerfile's image and this one agree.
const (
	uid     = 65532
	binPath = "usr/local/bin/ozo-identity"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "ozo-image:", err)
		os.Exit(1)
	}
}

type options struct {
	out, tag, binary, caFile, arch string
	epoch                          time.Time
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("ozo-image", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	fs.StringVar(&o.out, "out", "ozo-identity.tar", "OCI layout tar file to write")
	fs.StringVar(&o.tag, "tag", "ozo-identity:dev", "image name recorded in the layout (org.opencontainers.image.ref.name)")
	fs.StringVar(&o.binary, "binary", "", "a static linux ozo-identity binary; empty: build ./cmd/ozo-identity with CGO_ENABLED=0")
	fs.StringVar(&o.caFile, "ca-file", "/etc/ssl/certs/ca-certificates.crt", "CA certificates to put in the image")
	fs.StringVar(&o.arch, "arch", runtime.GOARCH, "GOARCH of the image")
	if err := fs.Parse(args); err != nil {
		return err
	}
	// Reproducible: the same inputs give the same digest (SOURCE_DATE_EPOCH as in other builders).
	o.epoch = time.Unix(0, 0).UTC()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH: %w", err)
		}
		o.epoch = time.Unix(sec, 0).UTC()
	}
	start := time.Now()
	if o.binary == "" {
		dir, err := os.MkdirTemp("", "ozo-image")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		o.binary = filepath.Join(dir, "ozo-identity")
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", o.binary,
			"github.com/ozo-platform/ozo-identity/cmd/ozo-identity")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+o.arch)
		cmd.Stdout, cmd.Stderr = stderr, stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go build: %w", err)
		}
	}
	img, err := build(o)
	if err != nil {
		return err
	}
	if err := writeOCIArchive(img, o); err != nil {
		return err
	}
	st, err := os.Stat(o.out)
	if err != nil {
		return err
	}
	digest, _ := img.Digest()
	fmt.Fprintf(stderr, "wrote %s: %s, %.1f MB, in %s\n", o.out, digest, float64(st.Size())/1e6, time.Since(start).Round(100*time.Millisecond))
	return nil
}

// build assembles the image: one layer on nothing, its config says who runs what.
func build(o options) (v1.Image, error) {
	bin, err := os.ReadFile(o.binary)
	if err != nil {
		return nil, fmt.Errorf("binary: %w", err)
	}
	cas, err := os.ReadFile(o.caFile)
	if err != nil {
		return nil, fmt.Errorf("CA certificates: %w", err)
	}
	rootfs, err := rootLayer(o.epoch, bin, cas)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(rootfs)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{Layer: layer, History: v1.History{
		Created: v1.Time{Time: o.epoch}, CreatedBy: "ozo-image", Comment: "ozo-identity, CA certificates, nonroot user"}})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", o.arch
	cf.Created = v1.Time{Time: o.epoch}
	cf.Config = v1.Config{
		User:       strconv.Itoa(uid) + ":" + strconv.Itoa(uid),
		Entrypoint: []string{"/" + binPath},
		Cmd:        []string{"serve"},
		WorkingDir: "/data",
		Env: []string{
			"PATH=/usr/local/bin:/usr/bin:/bin",
			"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
			// The SQLite file (when no PostgreSQL is configured) and nothing else is written here;
			// temporary files go to /tmp: the root filesystem may be read-only.
			"OZO_DATA_DIR=/data",
			"TMPDIR=/tmp",
		},
		Volumes:      map[string]struct{}{"/data": {}},
		ExposedPorts: map[string]struct{}{"8090/tcp": {}, "9090/tcp": {}},
		Labels: map[string]string{
			"org.opencontainers.image.title":  "ozo-identity",
			"org.opencontainers.image.source": "https://github.com/ozo-platform/ozo-identity",
		},
	}
	return mutate.ConfigFile(img, cf)
}

// rootLayer is the whole filesystem as a tar: directories first, owned by root except /data
// (the nonroot user's) and /tmp (sticky, everyone's).
func rootLayer(epoch time.Time, bin, cas []byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := func(name string, mode int64, owner int) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, Uid: owner, Gid: owner, ModTime: epoch, Format: tar.FormatPAX})
	}
	file := func(name string, mode int64, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/data:/sbin/nologin\n", uid, uid)
	group := fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", uid)
	steps := []func() error{
		func() error { return dir("etc", 0o755, 0) },
		func() error { return file("etc/passwd", 0o644, []byte(passwd)) },
		func() error { return file("etc/group", 0o644, []byte(group)) },
		func() error { return dir("etc/ssl", 0o755, 0) },
		func() error { return dir("etc/ssl/certs", 0o755, 0) },
		func() error { return file("etc/ssl/certs/ca-certificates.crt", 0o644, cas) },
		func() error { return dir("usr", 0o755, 0) },
		func() error { return dir("usr/local", 0o755, 0) },
		func() error { return dir("usr/local/bin", 0o755, 0) },
		func() error { return file(binPath, 0o755, bin) },
		func() error { return dir("data", 0o700, uid) },
		func() error { return dir("tmp", 0o1777, 0) },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeOCIArchive writes img as an OCI image layout (oci-layout, index.json, blobs/) in a tar.
func writeOCIArchive(img v1.Image, o options) error {
	dir, err := os.MkdirTemp("", "ozo-image-layout")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": o.tag,
		"io.containerd.image.name":          o.tag,
	}), layout.WithPlatform(v1.Platform{OS: "linux", Architecture: o.arch})); err != nil {
		return fmt.Errorf("write layout: %w", err)
	}
	tmp := o.out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		hdr := &tar.Header{Name: filepath.ToSlash(rel), Mode: 0o644, ModTime: o.epoch, Format: tar.FormatPAX}
		if d.IsDir() {
			hdr.Typeflag, hdr.Name, hdr.Mode = tar.TypeDir, hdr.Name+"/", 0o755
			return tw.WriteHeader(hdr)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(data))
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		_, err = tw.Write(data)
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", o.out, err)
	}
	return os.Rename(tmp, o.out)
}
