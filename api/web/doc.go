// Package web serves every HTML page of ozo-identity: the validation page today, SSO and OZO
// account pages next. Pages share one layout, a Dutch and English message catalog, a strict
// Content-Security-Policy, sealed cookie sessions and CSRF tokens on every form.
//
// To add a page:
//
//  1. Write templates/<name>.html defining {{define "title"}} and {{define "main"}}; use {{t "key"}}
//     for text and add each key to both languages in messages.go (TestCatalogComplete checks).
//     A form posts to a path under Handler.Pages and includes {{template "csrf" .}}.
//  2. Write a handler that calls h.Render(w, r, status, "<name>", data) — data is .Data in the
//     template — or h.Error(w, r, status, "error.<key>", err) for a failure. Never put an error
//     string in data: Error logs it with the request id and shows only the id.
//  3. Mount it behind h.Pages (security headers, language, CSRF check on every POST, panics as
//     HTML 500s): a spec-given path in package api (which sends no CORS headers for pages, see
//     corsRoute), or a path under PagePrefix added to the mux in New. An identity provider's
//     cross-site POST back (SAML ACS, OIDC form_post) goes behind h.Callback instead, and
//     verifies itself.
//
// Per-person state goes in a Session (LoadSession/SaveSession): a cookie sealed with AES-GCM
// under a key derived from Config.Key, so it cannot be read or forged without the server's key.
// Keep it small (a few IDs); cookies are limited to about 4 KB.
//
// The language comes from ?lang=nl|en (remembered in a cookie), else the cookie, else
// Accept-Language, else Dutch. No page runs script; inline style is not allowed either.
package web
