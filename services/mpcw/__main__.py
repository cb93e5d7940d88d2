from services.mpcw.cli import main

main()
