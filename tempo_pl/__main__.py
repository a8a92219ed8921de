from tempo_pl.cli import main

main()
