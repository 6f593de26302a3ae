from k3srotd.cli import main

main()
