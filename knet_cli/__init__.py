"""The `knet` command line: an application package that composes the lab and the components.

    main.py       `knet ...`: version, and the subcommands each part registers through its public
                  entry point (`lab.cli.register`, `netpolicy.cli.register`)
    uninstall.py  `knet uninstall-node` / `knet-uninstall-node`: composes the uninstall steps every
                  component exports (`<component>.uninstall.uninstall_steps`)

Nothing imports this package; it imports only public entry points (the layering contract in
pyproject.toml checks both).
"""
