from .cli import main

if __name__ == "__main__":  # not when imported (mpi4py.futures workers import the main module of rank 0)
    main()
