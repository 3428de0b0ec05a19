// Package dezi is login through OpenID Connect: care providers' own OpenID Providers
// (OIDCConfig) and Dezi, the national identity of Dutch care professionals (Config).
//
// # What this relies on
//
// Dezi's interface specification for platform vendors ("Koppelvlakspecificatie Dezi-online
// koppelvlak 1: platformleverancier", dezi.nl, April 2024) is not public in full; this package
// was built from what is public:
//
//   - dezi.nl "De oplossing": a care application sends the professional to Dezi, who logs in
//     with an approved means (eIDAS high), and gets their care identity: who they are, where
//     they work (care provider), and their role.
//   - The Nuts "Generic Functions" implementation guide (build.fhir.org/ig/nuts-foundation/
//     nl-generic-functions-ig, credential-DeziIDTokenCredential and DeziUserCredential): the
//     attestation ("verklaring") is a signed JWT obtained from Dezi's OIDC UserInfo endpoint;
//     it is verified against Dezi's JWKS, with expiry checks; it identifies the professional
//     by UZI/Dezi number (OID 2.16.528.1.1007.3.1) and the care provider by URA (abonnee
//     nummer, OID 2.16.528.1.1007.3.3), with role codes from the UZI role code list; levels of
//     assurance are eIDAS URIs (http://eidas.europa.eu/LoA/high).
//
// # What is assumed (check against the current specification before production)
//
//   - Authorization code flow with PKCE (S256), state and nonce; the ID token is RS256 (or
//     another asymmetric algorithm) signed with the keys of the discovery document's jwks_uri.
//   - The userinfo response is application/jwt: a JWE (RSA-OAEP(-256) or ECDH-ES, to this
//     relying party's key) around a JWS signed with the OP's keys; acceptance environments
//     send the JWS alone (allow_signed_userinfo). Its claims: sub (as in the ID token),
//     dezi_nummer and verklaring.
//   - The verklaring is a JWS whose protected header names its key set in jku and its key in
//     kid; the jku must be on the configured allow-list (same scheme and host; the exact path,
//     or below an entry ending in "/"). Its claims, with the names of the issue that asked for
//     this: dezi_nummer (9 digits), voorletters, voorvoegsel, achternaam, abonnee_nummer (the
//     URA, 8 digits), abonnee_naam, rol_code, loa_dezi, and iss, aud (this client, when
//     present), iat, nbf, exp (required) and jti (required, accepted once).
//   - The 2024 token shape the Nuts guide shows (Dezi_id, a relations[] array of ura,
//     entity_name and roles, loa_Dezi) is not read: a login carrying it fails with a clear
//     error rather than binding something guessed.
//
// dezitest is a stand-in that speaks exactly this, so the tests show what is relied on.
package dezi
