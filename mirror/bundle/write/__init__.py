"""The bundle writer: `driver.write(spec, source, sink)`.

    files      the checked descriptors every source reads through (no link followed, identity kept)
    sources    where the files come from: a folder, a staging folder they arrive in, a fill in place
    inplace    the partial bundle written by position, with its journal (a pull resumes it)
    sinks      where the bytes go: one file, parts, in place
    driver     the two passes: hash, then write front to back
"""
