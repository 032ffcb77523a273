from imatui.cli import main

raise SystemExit(main())
