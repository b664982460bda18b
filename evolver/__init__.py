"""hrm-evolve's engine, in layered parts; each part's docstring says what it may import.

    evolver (floor 0: settings, verdicts)        imports no other part
    propose   record                             floor 0 only
    execute                                      floor 0 only: it knows no verdicts
    judge                                        floor 0 and record: it knows no executors
    run                                          all of the above
    ui                                           everything

tests/evolver/test_layers.py fails on any import against this order.
"""
