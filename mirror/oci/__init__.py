"""Bundles in an OCI registry, as CNCF ModelPack artifacts (docs/oci.md).

Air-gapped sites already run a registry (Harbor, Artifactory, Quay, the CNCF distribution
registry); `mirror push` stores a bundle there as one raw layer per file (digest = the file's
sha256 from the manifest, so the registry deduplicates across commits and models) and nothing
else; the bundle manifest, signature and ML-BOM are OCI 1.1 referrers of it, so `mirror pull
oci://` rebuilds the byte-identical bundle and every rule of verify still applies.

    reference.py  oci://host[:port]/repo[:tag|@digest]
    auth.py       credentials (--username/--password-stdin, ~/.docker/config.json), Basic/Bearer
    client.py     the distribution-spec HTTP client (blobs, chunked uploads, manifests)
    transport.py  every request: credentials bound to their origin, redirects, deadlines, size bounds
    modelpack.py  bundle manifest <-> ModelPack manifest and config
    referrers.py  the evidence as OCI 1.1 referrers: the referrers API, else the referrers tag
    push.py       mirror push
    pull.py       mirror pull oci:// (rebuild, resume) and mirror install oci://
"""
