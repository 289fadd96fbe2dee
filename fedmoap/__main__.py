from fedmoap.cli import main

raise SystemExit(main())
