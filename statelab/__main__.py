from statelab.cli import main

raise SystemExit(main())
