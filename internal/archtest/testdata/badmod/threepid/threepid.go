// Package threepid imports nothing of the module: no violation.
package threepid

// Medium is fine.
const Medium = "email"
