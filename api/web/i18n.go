package web

import (
	"net/http"
	"time"

	"golang.org/x/text/language"
)

// languages are the pages' languages, the default first.
var languages = []string{"nl", "en"}

var languageNames = map[string]string{"nl": "Nederlands", "en": "English"}

var matcher = language.NewMatcher([]language.Tag{language.Dutch, language.English})

// language picks the page language: ?lang= (remembered in a cookie for the next pages), then the
// cookie, then Accept-Language, then Dutch.
func (h *Handler) language(w http.ResponseWriter, r *http.Request) string {
	if l := r.URL.Query().Get("lang"); catalog[l] != nil {
		http.SetCookie(w, h.cookie(langCookie, l, 365*24*time.Hour, http.SameSiteLaxMode))
		return l
	}
	if c, err := r.Cookie(langCookie); err == nil && catalog[c.Value] != nil {
		return c.Value
	}
	tags, _, _ := language.ParseAcceptLanguage(r.Header.Get("Accept-Language"))
	if len(tags) == 0 {
		return languages[0]
	}
	_, i, conf := matcher.Match(tags...)
	if conf == language.No {
		return languages[0]
	}
	return languages[i]
}

// translator looks keys up in one language; a missing key shows itself, and TestCatalogComplete
// keeps that from shipping.
func translator(lang string) func(key string) string {
	msgs := catalog[lang]
	return func(key string) string {
		if m, ok := msgs[key]; ok {
			return m
		}
		return key
	}
}
