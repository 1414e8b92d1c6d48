// Package seccomp compiles a seccomp profile in the OCI runtime-spec form
// (docker's default profile, from github.com/moby/profiles/seccomp) into a
// classic BPF program and loads it into the calling thread, in pure Go: no
// libseccomp, so ibuild keeps building on a machine with only gcc and
// libc6-dev.
//
// The program checks the architecture first: the native one and its 32-bit
// companion (i386 on x86_64, arm on aarch64) each get their own system call
// numbers; anything else, the x32 ABI included, is killed. System calls are
// found by a binary search over ranges of numbers that share an outcome,
// so a call costs a handful of comparisons whatever the profile's size.
// Argument conditions (==, !=, <, <=, >, >=, masked ==) compare all 64
// bits, as libseccomp does.
//
// Rules for the same call apply in the profile's order: the first whose
// conditions all hold gives the action; none holding gives the default
// action. Several conditions on the same argument in one rule are separate
// alternatives, as runc treats them (runc#2735); conditions on different
// arguments must all hold.
//
// The package does not pick the profile's conditional parts (capabilities,
// kernel version): Default does that for a capability set, as docker does.
package seccomp
