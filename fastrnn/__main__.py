from fastrnn.cli import main

main()
