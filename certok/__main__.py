from certok.cli.main import main

main()
