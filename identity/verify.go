package identity

import (
	"maunium.net/go/mautrix/federation/signutil"
	"maunium.net/go/mautrix/id"
)

// verifyJSON checks serverName's signature by keyID over a signed JSON object.
func verifyJSON(serverName, keyID, publicKey string, data []byte) error {
	return signutil.VerifyJSON(serverName, id.KeyID(keyID), id.SigningKey(publicKey), []byte(data))
}
