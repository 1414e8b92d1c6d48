package attest

import "regexp"

// secretWords and publicWords are buildx's SecretsUsedInArgOrEnv rule: a
// name whose first or last _-separated word (or the whole name) is one of
// secretWords, unless one is also of publicWords, looks like a secret.
var (
	secretWords = regexp.MustCompile(`(?i)(?:_|^)(?:apikey|auth|credential|credentials|key|password|pword|passwd|secret|token)(?:_|$)`)
	publicWords = regexp.MustCompile(`(?i)(?:_|^)(?:public|file|version)(?:_|$)`)
)

// SecretName reports whether an ARG or ENV name looks like it holds a
// secret, by buildx's SecretsUsedInArgOrEnv rule (PASSWORD, GITHUB_TOKEN,
// api_key; not PUBLIC_KEY or TOKEN_FILE). Such build args never appear in
// a provenance attestation.
func SecretName(name string) bool {
	return secretWords.MatchString(name) && !publicWords.MatchString(name)
}
