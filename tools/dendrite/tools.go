//go:build tools

// Package tools pins the Dendrite homeserver used by the end-to-end tests
// (built by scripts/build-dendrite.sh), so its dependencies stay out of the
// main module.
package tools

import _ "github.com/element-hq/dendrite/cmd/dendrite"
