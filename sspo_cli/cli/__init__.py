"""The command lines: parse, call, render. They know nothing of maths or engines.

    main.py      `sspo validate`, `sspo train` and the `sspo` app (`main`)
    research.py  `sspo eval`, `sspo compare`, `sspo sweep`, added to the app by `register`
    guard.py     one clear message and exit code 2 for bad input; signals; no tracebacks

Importing this package imports nothing heavy: `sspo --help` is instant.
"""
