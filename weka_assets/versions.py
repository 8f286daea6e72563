"""The manifest version: bump it whenever decoded bytes change for an unchanged decode key.

A decode key hashes every *input* of a decoded dataset (corpus digest, tokenizer, filler,
seed, block size, scope policy, options). A change of the decoder's *semantics* changes the
bytes without changing any input, so it must change this number instead: the historic
per-session scope bug was exactly that. This literal is the only place the number is written;
everything else (decode keys, Dagster code versions) reads it from here.
"""

MANIFEST_VERSION = 2

# Changelog (newest first). One line per bump: what changed in the decoded bytes, and why.
CHANGELOG: dict[int, str] = {
    2: "Every declared hash_id_scope decodes in its proven layout: global in one corpus-wide "
    "scope, absent (per context) with one scope per context; the decode scope is in the key "
    "material, the manifest and each trace's entry. Blocks of local corpora are unchanged; "
    "their keys and trace entries changed.",
    1: "First release: scope = trace id for the parent and every subagent (hash_id_scope local); "
    "blocks of 4 sub-blocks drawn by splitmix64 from the filler corpus; partial last blocks "
    "decode as a prefix of their id's block; unhashed tails from a separate PRF domain.",
}
