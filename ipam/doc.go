// Package ipam is podroute's built-in IP address allocator.
//
// The podroute CNI plugin calls it in-process when a network's "ipam" section
// has "type": "podroute-ipam"; the same binary run as podroute-ipam exposes it
// as a standalone CNI IPAM plugin (see CmdAdd and friends).
//
// On-disk layout, one directory per network:
//
//	<dataDir>/<network>/lock                 flock(2) target serialising all mutations
//	<dataDir>/<network>/<address>            one symlink per reserved address, e.g.
//	                                         10.244.1.7 -> <containerID>/<ifname>
//	<dataDir>/<network>/index                cache of every reservation's owner, rebuilt
//	                                         from the symlinks whenever it is not current
//	<dataDir>/<network>/last_reserved_ip.<n> cursor of range set n: the last address it handed out
//	                                         (regular file, one address padded to 40 bytes)
//	<dataDir>/<network>/.tmp-*               scratch files (STATUS write probes); removed by the
//	                                         next mutation if their writer died
//
// Reservations are symlinks because symlink(2) creates the entry and its
// content in one step and fails if the name exists: a reader or a crash can
// never observe a half-written reservation, and two attachments can never hold
// the same address. The owner lives in the link target; the index file saves
// reading every target, so loading the store is one readdir and one small read
// (see index.go for why the index can never report a wrong owner).
//
// Nothing is fsynced: the page cache survives the death of any process
// (including SIGKILL), which is the failure this store is built for. After a
// power loss every pod sandbox is recreated anyway, so what a lost update can
// leave behind is reservations of pods that no longer exist, which GC reclaims.
package ipam
