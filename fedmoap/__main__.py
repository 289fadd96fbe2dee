from fedmoap.run.cli import main

raise SystemExit(main())
