package web

// catalog holds every text a page shows, per language. Keys are "<page>.<what>".
var catalog = map[string]map[string]string{
	"nl": {
		"site.name":   "OZO identiteitsserver",
		"lang.switch": "Taal",

		"validate.ok.title":     "E-mailadres bevestigd",
		"validate.ok.body":      "Uw e-mailadres is bevestigd. U kunt dit venster sluiten en teruggaan naar uw chat-app.",
		"validate.fail.title":   "Bevestigen mislukt",
		"validate.fail.retry":   "Vraag in uw chat-app een nieuwe bevestigingsmail aan.",
		"validate.err.failed":   "De bevestiging is mislukt.",
		"validate.err.token":    "De code in de link klopt niet.",
		"validate.err.expired":  "De link is verlopen.",
		"validate.err.attempts": "Er zijn te veel verkeerde pogingen gedaan.",
		"validate.err.invalid":  "De link is ongeldig of onvolledig.",
		"validate.form.intro":   "Staat er een code in de e-mail? Vul die hier in.",
		"validate.form.token":   "Code uit de e-mail",
		"validate.form.submit":  "Bevestigen",

		"error.title":     "Er ging iets mis",
		"error.csrf":      "Dit formulier is verlopen of kwam niet van deze site. Ga terug, laad de pagina opnieuw en probeer het nog eens.",
		"error.notfound":  "Deze pagina bestaat niet.",
		"error.internal":  "Er ging iets mis aan onze kant. Probeer het later nog eens.",
		"error.requestid": "Noem bij vragen deze code:",
	},
	"en": {
		"site.name":   "OZO identity server",
		"lang.switch": "Language",

		"validate.ok.title":     "Email address verified",
		"validate.ok.body":      "Your email address has been verified. You can close this window and return to your chat app.",
		"validate.fail.title":   "Verification failed",
		"validate.fail.retry":   "Request a new verification email in your chat app.",
		"validate.err.failed":   "The verification failed.",
		"validate.err.token":    "The code in the link is not correct.",
		"validate.err.expired":  "The link has expired.",
		"validate.err.attempts": "Too many wrong attempts were made.",
		"validate.err.invalid":  "The link is invalid or incomplete.",
		"validate.form.intro":   "Does the email contain a code? Enter it here.",
		"validate.form.token":   "Code from the email",
		"validate.form.submit":  "Verify",

		"error.title":     "Something went wrong",
		"error.csrf":      "This form has expired or did not come from this site. Go back, reload the page and try again.",
		"error.notfound":  "This page does not exist.",
		"error.internal":  "Something went wrong on our side. Please try again later.",
		"error.requestid": "If you ask for help, mention this code:",
	},
}
