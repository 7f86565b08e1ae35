# The manifest: every output with its checksum and the item-conservation equation.


rule write_manifest:
    input:
        unpack(get_manifest_inputs),
    output:
        manifest=LAYOUT.manifest,
    log:
        LAYOUT.log("write_manifest", "manifest"),
    conda:
        "../environment.yml"
    params:
        plan_uri=URIS.plan,
    script:
        "../scripts/write_manifest.py"
