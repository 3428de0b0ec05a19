package main

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// The Dockerfile for operators with Docker builds the image make image builds: same user,
// entrypoint, command, data directory and environment, and the Go of go.mod.
func TestDockerfileMatchesImage(t *testing.T) {
	data, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(data)
	for _, want := range []string{
		"USER 65532:65532",
		`ENTRYPOINT ["/` + binPath + `"]`,
		`CMD ["serve"]`,
		"VOLUME /data",
		"OZO_DATA_DIR=/data",
		"TMPDIR=/tmp",
		"CGO_ENABLED=0",
		"--chown=65532:65532",
		"FROM gcr.io/distroless/static-debian12:nonroot",
	} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	mod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(mod)
	if goVersion == nil || !strings.Contains(df, "FROM golang:"+string(goVersion[1])+" AS build") {
		t.Errorf("Dockerfile's builder is not the Go of go.mod (%s)", goVersion)
	}
}
