#!/bin/sh
# make.sh rebuilds the RPM database fixtures testdata/rpm, rpm-small,
# rpm-bdb and rpm-bdb-be with real tools (Debian 12: apt-get install rpm
# sqlite3 db5.3-util gnupg python3). Run it from testdata/rpm-fixtures.
# The tests never run it: they read the committed files.
set -eu
here=$(pwd)
td=$(cd .. && pwd)
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT

# Three noarch packages: hello-tiny, epochal (Epoch: 2) and bigdesc (a
# 21 KB header: its SQLite cell overflows onto several pages).
for s in hello-tiny epochal bigdesc; do
	rpmbuild --define "_topdir $w" -bb "$here/$s.spec" >/dev/null 2>&1
done

# A signing key, imported as rpm imports keys: a gpg-pubkey entry.
export GNUPGHOME="$w/gnupg"
mkdir -m 700 "$GNUPGHOME"
gpg --batch --passphrase '' --quick-gen-key 'ibuild test key <test@ibuild.invalid>' ed25519 sign never 2>/dev/null
gpg --armor --export test@ibuild.invalid >"$w/key.asc"

# testdata/rpm: rpm's sqlite backend, as Fedora 33+ and RHEL 9 write it.
root="$w/root"
rpm --root "$root" --dbpath /var/lib/rpm --define '_db_backend sqlite' --initdb
rpm --root "$root" --dbpath /var/lib/rpm --define '_db_backend sqlite' --import "$w/key.asc"
rpm --root "$root" --dbpath /var/lib/rpm --define '_db_backend sqlite' -i --nodeps --justdb "$w"/RPMS/noarch/*.rpm
db="$root/var/lib/rpm/rpmdb.sqlite"
cp "$db" "$td/rpm/var/lib/rpm/rpmdb.sqlite"
: >"$td/rpm/var/lib/rpm/rpmdb.sqlite-wal"

# testdata/rpm-small: the same database vacuumed by sqlite3 to 512-byte
# pages with 32 reserved bytes each (480 usable, the format's minimum):
# interior b-tree pages and long overflow chains.
cp "$db" "$w/small.sqlite"
sqlite3 "$w/small.sqlite" 'PRAGMA journal_mode=DELETE;' 'PRAGMA page_size=512;' 'VACUUM;' >/dev/null
sqlite3 "$w/small.sqlite" '.filectrl reserve_bytes 32' 'VACUUM;' >/dev/null
cp "$w/small.sqlite" "$td/rpm-small/usr/lib/sysimage/rpm/rpmdb.sqlite"

# testdata/rpm-bdb and rpm-bdb-be: Debian's rpm reads Berkeley DB
# (bdb_ro) but does not write it, so the Packages headers are loaded with
# Berkeley DB's own db_load, keyed as rpm keys them (the header number,
# native byte order, and key 0 holding the next number): little-endian
# with 4096-byte pages, and big-endian with 16384-byte pages (small
# headers on the hash page, large ones off-page).
dump() { # dump ORDER(< or >): db_load's bytevalue format
	python3 - "$db" "$1" <<'PY'
import sqlite3, struct, sys
rows = sqlite3.connect(sys.argv[1]).execute("select hnum, blob from Packages order by hnum").fetchall()
o = sys.argv[2]
print("VERSION=3\nformat=bytevalue\ntype=hash\nHEADER=END")
print(" " + struct.pack(o + "I", 0).hex()); print(" " + struct.pack(o + "I", max(r[0] for r in rows) + 1).hex())
for h, b in rows:
    print(" " + struct.pack(o + "I", h).hex()); print(" " + bytes(b).hex())
print("DATA=END")
PY
}
rm -f "$td/rpm-bdb/var/lib/rpm/Packages" "$td/rpm-bdb-be/var/lib/rpm/Packages"
dump '<' | db5.3_load "$td/rpm-bdb/var/lib/rpm/Packages"
dump '>' | db5.3_load -c db_lorder=4321 -c db_pagesize=16384 "$td/rpm-bdb-be/var/lib/rpm/Packages"

# Check: rpm itself lists the packages of each fixture.
rpm --root "$td/rpm" --dbpath /var/lib/rpm -qa
rpm --root "$td/rpm-small" --dbpath /usr/lib/sysimage/rpm -qa
rpm --root "$td/rpm-bdb" --dbpath /var/lib/rpm --define '_db_backend bdb_ro' -qa 2>/dev/null
