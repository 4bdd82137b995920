from archive_tool.cli import main

main()
