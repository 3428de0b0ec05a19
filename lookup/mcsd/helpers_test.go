package mcsd_test

import (
	"io"
	"log/slog"
	"net/url"
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func urlQueryEscape(s string) string { return url.QueryEscape(s) }
