from segmentgate.cli import main

raise SystemExit(main())
