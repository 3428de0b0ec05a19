// Package dezi is login through OpenID Connect: care providers' own OpenID Providers
// (OIDCConfig) and Dezi, the national identity of Dutch care professionals (Config).
package dezi
