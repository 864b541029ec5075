package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"regexp"
	"strings"
)

// The policy's constants (examples/POLICY.md).
const (
	rejectCode    = 20001 // OpenIM's business error range is 20001-29999
	mask          = "***"
	defaultAvatar = "https://example.com/avatar/default.png"
	groupTag      = `{"createdVia":"openim-callback-gateway"}`
)

// blockedWords are matched case-insensitively anywhere in a text, in this order.
var blockedWords = []string{"forbidden", "spam"}

// blockedPattern matches any blocked word, whatever its case.
var blockedPattern = regexp.MustCompile(`(?i)` + strings.Join(quoteAll(blockedWords), "|"))

func quoteAll(words []string) []string {
	quoted := make([]string, len(words))
	for i, w := range words {
		quoted[i] = regexp.QuoteMeta(w)
	}
	return quoted
}

// blockedWord returns the first blocked word that text contains (as listed, lower case), or "".
func blockedWord(text string) string {
	lower := strings.ToLower(text)
	for _, w := range blockedWords {
		if strings.Contains(lower, w) {
			return w
		}
	}
	return ""
}

// maskWords replaces every blocked word in text with the mask.
func maskWords(text string) string {
	return blockedPattern.ReplaceAllLiteralString(text, mask)
}

// maskContent masks the blocked words in every string value of a message content such as
// {"content":"hello"}, which must be a JSON object. It returns the object as compact JSON and
// true when something was masked; false when nothing changed or content is not a JSON object.
//
// It rewrites the JSON token by token rather than decoding into a map, so that key order and
// the spelling of numbers survive (a Go map would sort the keys).
func maskContent(content string) (string, bool) {
	if !strings.HasPrefix(strings.TrimSpace(content), "{") {
		return "", false
	}
	dec := json.NewDecoder(strings.NewReader(content))
	dec.UseNumber()
	var out bytes.Buffer
	changed, err := maskValue(dec, &out)
	if err != nil || !changed {
		return "", false
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return "", false // trailing data after the object: not a JSON object string
	}
	return out.String(), true
}

// maskValue copies the next JSON value from dec to out, masking its string values (not its
// keys), and reports whether it masked anything.
func maskValue(dec *json.Decoder, out *bytes.Buffer) (bool, error) {
	tok, err := dec.Token()
	if err != nil {
		return false, err
	}
	switch t := tok.(type) {
	case json.Delim: // '{' or '[': copy the members, then the closing delimiter
		out.WriteByte(byte(t))
		changed := false
		for i := 0; dec.More(); i++ {
			if i > 0 {
				out.WriteByte(',')
			}
			if t == '{' {
				key, err := dec.Token()
				if err != nil {
					return false, err
				}
				writeJSON(out, key)
				out.WriteByte(':')
			}
			c, err := maskValue(dec, out)
			if err != nil {
				return false, err
			}
			changed = changed || c
		}
		end, err := dec.Token()
		if err != nil {
			return false, err
		}
		out.WriteByte(byte(end.(json.Delim)))
		return changed, nil
	case string:
		masked := maskWords(t)
		writeJSON(out, masked)
		return masked != t, nil
	default: // json.Number, bool or nil, written back as they were
		writeJSON(out, t)
		return false, nil
	}
}

// writeJSON appends v as JSON, without escaping <, > and & (the content is not HTML).
func writeJSON(out *bytes.Buffer, v any) {
	enc := json.NewEncoder(out)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)           // a string, json.Number, bool or nil always encodes
	out.Truncate(out.Len() - 1) // drop the newline Encode adds
}
