package main

// sysMemfdCreate is memfd_create(2) (the syscall package has no constant).
const sysMemfdCreate = 279
