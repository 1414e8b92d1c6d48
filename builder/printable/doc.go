// Package printable makes untrusted text safe to print on a terminal or in a
// log: Dockerfile lines and words, stage names, file names and the messages
// that quote them. Control characters (an ESC that starts a cursor or title
// sequence, a carriage return that overwrites the line, a NUL that hides
// what follows), C1 controls, bidirectional-override characters and bytes
// that are not UTF-8 are written as Go escapes (\x1b, \x00, \u009b), so
// the text cannot move the cursor, recolour or clear the screen, or show
// something other than what it holds. Tabs and newlines are kept.
//
// It only escapes; it never truncates or drops text.
package printable
